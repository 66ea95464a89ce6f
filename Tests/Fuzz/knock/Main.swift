#if KNOCK_FUZZ
    // Built for fuzzing (-sanitize=fuzzer,address -DKNOCK_FUZZ), the program's main is libFuzzer's driver. SwiftPM
    // links every executable target with `--defsym main=<module>_main`, because it compiles the module's own entry
    // point under that name; a fuzz build has no entry point of its own (libFuzzer brings main), so this function is
    // that symbol, and it runs libFuzzer's driver exactly as libFuzzer's main would.

    /// libFuzzer's documented driver for programs with their own main (compiler-rt's FuzzerInterface.h).
    @_silgen_name("LLVMFuzzerRunDriver")
    func llvmFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("knock_fuzz_main")
    func knockFuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
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
    import Knock

    /// Without `-DKNOCK_FUZZ` (a plain `swift build`, as CI builds every target), knock-fuzz is not a fuzzer but a
    /// regression runner: it runs files (or every file in directories) through the fuzz entry point, one line each with
    /// what the parsers made of it, and exits 0 unless an input trips a property (which traps, as under libFuzzer). It
    /// also writes the seed corpus.
    @main
    struct KnockFuzzMain {
        static let usage = """
            usage: knock-fuzz FILE|DIRECTORY...    run inputs through the fuzz entry point (a regression run)
                   knock-fuzz --write-seeds DIR   write the seed corpus (Tests/Fuzz/knock/corpus) to DIR
            """

        static func main() throws {
            let arguments = Array(CommandLine.arguments.dropFirst())
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
            var count = 0
            for path in arguments {
                for file in files(path) {
                    guard let data = FileManager.default.contents(atPath: file) else {
                        print("knock-fuzz: cannot read \(file)")
                        exit(2)
                    }
                    let bytes = Array(data)
                    print("\(file): \(describe(bytes))")
                    run(bytes)
                    count += 1
                }
            }
            print("knock-fuzz: \(count) input\(count == 1 ? "" : "s") ran, no finding")
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

        /// What the parsers made of an input, for the regression run's log.
        static func describe(_ bytes: [UInt8]) -> String {
            switch FuzzKeys.verifier.verify(datagram: bytes, nowMilliseconds: FuzzKeys.clock) {
            case .accepted(let acceptance):
                return "knock accepted, signed by \(acceptance.key.algorithm.rawValue), \(acceptance.request.ports)"
            case .refused(.malformed(let error)) where error.field == .magic:
                if let cache = try? NonceCache(serialized: bytes, window: FuzzKeys.skew) {
                    return "nonce cache of \(cache.count) entries"
                }
                if let keys = try? AuthorizedKey.parseFile(String(decoding: bytes, as: UTF8.self)), !keys.isEmpty {
                    return "authorized keys: \(keys.map(\.key.algorithm.rawValue).joined(separator: ", "))"
                }
                if let signature = try? SSHSignature(binary: bytes) {
                    return "SSHSIG by \(signature.publicKey.algorithm.rawValue) for namespace \(signature.namespace)"
                }
                return "nothing parses it (\(error))"
            case .refused(let refusal):
                return "knock refused: \(refusal)"
            }
        }

        static func writeSeeds(to directory: String) throws {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (name, bytes) in try SeedCorpus.seeds() {
                guard FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data(bytes)) else {
                    print("knock-fuzz: cannot write \(directory)/\(name)")
                    exit(1)
                }
                print("\(directory)/\(name): \(bytes.count) bytes, \(describe(bytes))")
            }
        }
    }
#endif
