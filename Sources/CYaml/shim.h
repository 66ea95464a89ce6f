// libyaml's event parser (yaml_parser_parse). Only the YAML module imports this, and only its LibYAML.swift.
#include <yaml.h>
