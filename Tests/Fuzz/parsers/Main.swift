#if PARSER_FUZZ
    import Glibc

    // Built for fuzzing (-sanitize=fuzzer,address -DPARSER_FUZZ), the program's main is libFuzzer's driver, as in
    // Tests/Fuzz/knock/Main.swift: SwiftPM links every executable target with `--defsym main=<module>_main`, and this
    // function is that symbol. Which parser the inputs go to is chosen once, before the driver starts, by the
    // environment variable DRAWBRIDGE_FUZZ_TARGET (Tests/Fuzz/run-fuzz sets it).

    /// libFuzzer's documented driver for programs with their own main (compiler-rt's FuzzerInterface.h).
    @_silgen_name("LLVMFuzzerRunDriver")
    func llvmFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("parser_fuzz_main")
    func parserFuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        let name = getenv("DRAWBRIDGE_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let target = ParserTarget(rawValue: name) else {
            let names = ParserTarget.allCases.map(\.rawValue).joined(separator: ", ")
            print("parser-fuzz: set DRAWBRIDGE_FUZZ_TARGET to one of: \(names)")
            return 2
        }
        ParserFuzz.selected = target
        var argc = argc
        var argv = argv
        return llvmFuzzerRunDriver(&argc, &argv) { data, size in
            guard let data else { return 0 }
            return fuzz(data, size)
        }
    }
#else
    import FoundationEssentials
    import Glibc

    /// Without `-DPARSER_FUZZ` (a plain `swift build`, as CI builds every target), parser-fuzz is not a fuzzer but a
    /// regression runner: it runs files (or every file in directories) through the fuzz entry point of one parser,
    /// one line each with what the parser made of it, and exits 0 unless an input trips a property (which traps, as
    /// under libFuzzer). It also writes the seed corpora.
    @main
    struct ParserFuzzMain {
        static let usage = """
            usage: parser-fuzz [--target NAME] FILE|DIRECTORY...   run inputs through one parser's fuzz entry point
                                                                  (NAME defaults to DRAWBRIDGE_FUZZ_TARGET, else to
                                                                  the name of the directory, as in corpus/NAME)
                   parser-fuzz --write-seeds DIR                 write every seed corpus (Tests/Fuzz/parsers/corpus)
                                                                  to DIR/NAME
            targets: \(ParserTarget.allCases.map(\.rawValue).joined(separator: ", "))
            """

        static func main() throws {
            var arguments = Array(CommandLine.arguments.dropFirst())
            if arguments.isEmpty || arguments.first == "--help" || arguments.first == "-h" {
                print(usage)
                return
            }
            if arguments.first == "--write-seeds" {
                guard arguments.count == 2 else {
                    print(usage)
                    exit(2)
                }
                try writeSeeds(to: arguments[1])
                return
            }
            var named = getenv("DRAWBRIDGE_FUZZ_TARGET").map { String(cString: $0) }
            if arguments.first == "--target" {
                guard arguments.count >= 3 else {
                    print(usage)
                    exit(2)
                }
                named = arguments[1]
                arguments.removeFirst(2)
            }
            var count = 0
            for path in arguments {
                let name = named ?? path.split(separator: "/").last.map(String.init) ?? ""
                guard let target = ParserTarget(rawValue: name) else {
                    print("parser-fuzz: no target for \(path); name one with --target\n\(usage)")
                    exit(2)
                }
                ParserFuzz.selected = target
                for file in files(path) {
                    guard let data = FileManager.default.contents(atPath: file) else {
                        print("parser-fuzz: cannot read \(file)")
                        exit(2)
                    }
                    let bytes = Array(data)
                    print("\(file): \(target.rawValue): \(ParserFuzz.describe(bytes))")
                    run(bytes)
                    count += 1
                }
            }
            print("parser-fuzz: \(count) input\(count == 1 ? "" : "s") ran, no finding")
        }

        /// The input through the very function libFuzzer calls.
        static func run(_ bytes: [UInt8]) {
            let padded = bytes.isEmpty ? [0] : bytes
            _ = padded.withUnsafeBufferPointer { fuzz($0.baseAddress!, bytes.count) }
        }

        /// A file, or the files of a directory (not recursive), sorted.
        static func files(_ path: String) -> [String] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [path] }
            return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }
        }

        static func writeSeeds(to directory: String) throws {
            for target in ParserTarget.allCases {
                let path = "\(directory)/\(target.rawValue)"
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                ParserFuzz.selected = target
                for (name, bytes) in try SeedCorpus.seeds(for: target) {
                    guard FileManager.default.createFile(atPath: "\(path)/\(name)", contents: Data(bytes)) else {
                        print("parser-fuzz: cannot write \(path)/\(name)")
                        exit(1)
                    }
                    print("\(path)/\(name): \(bytes.count) bytes, \(ParserFuzz.describe(bytes))")
                    run(bytes)
                }
            }
        }
    }
#endif
