// drawbridge-bench: see Command.swift (`drawbridge-bench --help` says what is measured and how).
import ArgumentParser

DrawbridgeBench.main()
