// swift-tools-version:6.1
import PackageDescription

/// Every Swift target: a file sees only the members of modules it imports itself, so no module borrows another's
/// imports.
let swiftSettings: [SwiftSetting] = [.enableUpcomingFeature("MemberImportVisibility")]

let package = Package(
    name: "drawbridge",
    products: [
        .executable(name: "drawbridged", targets: ["drawbridged"]),
        .executable(name: "drawbridge", targets: ["drawbridge"]),
        .executable(name: "drawbridge-etcd", targets: ["drawbridge-etcd"]),
        .executable(name: "drawbridge-knock", targets: ["drawbridge-knock"]),
        .executable(name: "drawbridge-bench", targets: ["drawbridge-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.7.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.90.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        // No traits: the default ones import full Foundation (binary-delimited streams), which no binary of ours may
        // carry. This is why the tools version is 6.1.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        // Prometheus text exposition (counters, gauges, histograms) over swift-metrics' CoreMetrics; no Foundation.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C libraries and the small shim for what Swift cannot import. Only Netfilter imports CNftnl and CMnl; only
        // YAML imports CYaml.
        .systemLibrary(
            name: "CNftnl", path: "Sources/CNftnl", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev"])]),
        .systemLibrary(name: "CMnl", path: "Sources/CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .systemLibrary(
            name: "CYaml", path: "Sources/CYaml", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        .target(name: "CDrawbridgeLinux", path: "Sources/CDrawbridgeLinux"),

        // A small YAML reader over libyaml's event parser: text in, a positioned node tree or a positioned error out.
        // No anchors, aliases or custom tags; bounded depth, node count and size.
        .target(name: "YAML", dependencies: ["CYaml"], swiftSettings: swiftSettings),
        // Pure logic: addresses, policy, grants, authorization, the diff between desired and actual kernel state.
        .target(
            name: "DrawbridgeCore",
            dependencies: ["YAML", .product(name: "HeapModule", package: "swift-collections")],
            swiftSettings: swiftSettings),
        // The one OS layer for everything that is not nftables: files, sockets, credentials, clocks, event sources.
        .target(
            name: "HostSystem",
            dependencies: [
                "DrawbridgeCore", "CDrawbridgeLinux", .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings),
        // The drawbridge table as values: sets, chains, rules, elements, transactions, the nft text. No C library,
        // no clock: what the CLI needs offline, and what Netfilter encodes.
        .target(name: "NetfilterModel", dependencies: ["DrawbridgeCore"], swiftSettings: swiftSettings),
        // The one OS layer for nftables: netlink connection, batch encoding, the table driver, verification, events.
        .target(
            name: "Netfilter",
            dependencies: ["NetfilterModel", "DrawbridgeCore", "HostSystem", "CNftnl", "CMnl", "CDrawbridgeLinux"],
            swiftSettings: swiftSettings),
        // The agent's services: local API, grant store, audit, grants files, tamper repair.
        .target(
            name: "DrawbridgeAgent",
            dependencies: [
                "DrawbridgeCore", "NetfilterModel", "Netfilter", "HostSystem", "CDrawbridgeLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings),
        // Knocking with SSH keys: keys, SSHSIG, the ssh-agent protocol, the knock packet, replay nonces. Bytes in,
        // values or typed errors out; no sockets, no files (FoundationEssentials at most).
        .target(
            name: "Knock",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings),
        // etcd's v3 gRPC API: messages and client stubs generated from its .proto files by Protos/generate.sh and
        // committed, so no build runs protoc.
        .target(
            name: "EtcdAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Protos"]),
        // An etcd client: range, watch, put, delete, leases; no protobuf type in its API.
        .target(
            name: "Etcd",
            dependencies: [
                "EtcdAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            swiftSettings: swiftSettings),
        // drawbridge-etcd's logic: the sync that follows a host's keys and hands each change to the agent, the host
        // status it writes, and the values and settings of the requester commands.
        .target(
            name: "EtcdSync",
            dependencies: [
                "Etcd", "DrawbridgeCore", "HostSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings),

        .executableTarget(
            name: "drawbridged",
            dependencies: [
                "DrawbridgeAgent", "DrawbridgeCore", "HostSystem", "NetfilterModel", "Netfilter",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        // The CLI: no Netfilter, so no libnftnl or libmnl in the binary; `rules -c` prints the table offline.
        // libstdc++ is linked statically (packaging/static-libstdc++): one grant is a short-lived process, and loading
        // the shared library took a tenth of it.
        .executableTarget(
            name: "drawbridge",
            dependencies: [
                "DrawbridgeCore", "NetfilterModel", "HostSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(["-L\(Context.packageDirectory)/packaging/static-libstdc++"])]),
        // Fleet grants through etcd, in a process of its own: `sync` follows this host's keys and hands each change to
        // the agent over the local socket (as an unprivileged user: the TLS, HTTP/2 and gRPC code never runs in the
        // agent, which stays small); `grant`, `revoke` and `list` write and read the keys for whoever requests access.
        .executableTarget(
            name: "drawbridge-etcd",
            dependencies: [
                "EtcdSync", "Etcd", "DrawbridgeCore", "HostSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings),
        // Knocks, in a process of its own: `listen` receives the knock port's packets from the kernel (NFLOG), checks
        // signature, freshness and replay with no capability left, and hands what verified to the agent; `send` is
        // the client that `drawbridge knock` runs. The crypto and the packet parser never run in the agent.
        .executableTarget(
            name: "drawbridge-knock",
            dependencies: [
                "Knock", "DrawbridgeCore", "HostSystem", "Netfilter", "CDrawbridgeLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "drawbridge-bench",
            dependencies: [
                "NetfilterModel", "Netfilter", "DrawbridgeCore", "HostSystem", "DrawbridgeAgent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings),

        .target(
            name: "TestSupport", dependencies: ["NetfilterModel", "Netfilter", "DrawbridgeCore", "HostSystem"],
            path: "Tests/TestSupport", swiftSettings: swiftSettings),
        .testTarget(name: "YAMLTests", dependencies: ["YAML"], swiftSettings: swiftSettings),
        .testTarget(name: "DrawbridgeCoreTests", dependencies: ["DrawbridgeCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KnockTests", dependencies: ["Knock", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "HostSystemTests", dependencies: ["HostSystem", "DrawbridgeCore", "TestSupport"],
            swiftSettings: swiftSettings),
        // The model alone: keys, text, timeouts. No root, no kernel.
        .testTarget(
            name: "NetfilterModelTests", dependencies: ["NetfilterModel", "DrawbridgeCore"],
            swiftSettings: swiftSettings),
        // Transactions encoded to netlink bytes and compared with Golden/: no root, no kernel.
        .testTarget(
            name: "NetfilterEncodingTests", dependencies: ["Netfilter", "NetfilterModel", "DrawbridgeCore"],
            exclude: ["Golden"], swiftSettings: swiftSettings),
        // The kernel: tests in throwaway network namespaces, as root.
        .testTarget(
            name: "NetfilterTests",
            dependencies: ["NetfilterModel", "Netfilter", "DrawbridgeCore", "HostSystem", "TestSupport"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "EndToEndTests", dependencies: ["DrawbridgeCore", "NetfilterModel", "Netfilter", "TestSupport"],
            swiftSettings: swiftSettings),
        // The etcd tests run etcd and etcd-probe (the Etcd client driven over stdin/stdout) inside a throwaway
        // network namespace; the two share the message types of EtcdProbeProtocol. drawbridge-etcd runs there too,
        // its sync handing updates to a fake agent socket in the test process.
        .target(name: "EtcdProbeProtocol", path: "Tests/EtcdProbeProtocol", swiftSettings: swiftSettings),
        .executableTarget(
            name: "etcd-probe", dependencies: ["Etcd", "EtcdProbeProtocol"], path: "Tests/EtcdProbe",
            swiftSettings: swiftSettings),
        .testTarget(
            name: "EtcdTests",
            dependencies: [
                "Etcd", "EtcdSync", "EtcdProbeProtocol", "DrawbridgeCore", "HostSystem", "Netfilter", "TestSupport",
            ],
            swiftSettings: swiftSettings),
        // A libFuzzer target for the knock parsers and verifier: Tests/Fuzz/run-fuzz knock builds it alone with
        // -sanitize=fuzzer,address -DKNOCK_FUZZ. Built like any other target, it is a regression runner over corpus
        // files (and writes the seed corpus), so CI's debug build compiles it too.
        .executableTarget(
            name: "knock-fuzz",
            dependencies: [
                "Knock",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            path: "Tests/Fuzz/knock", exclude: ["corpus", "knock.dict"], swiftSettings: swiftSettings),
        // One libFuzzer target for the parsers of what drawbridged reads from outside: the policy, grants files and etcd
        // values, local API requests, netlink replies, addresses, durations and timestamps. Tests/Fuzz/run-fuzz builds
        // it alone with -sanitize=fuzzer,address -DPARSER_FUZZ and picks the parser with DRAWBRIDGE_FUZZ_TARGET; built
        // like any other target, it is a regression runner over corpus files (and writes the seed corpora).
        .executableTarget(
            name: "parser-fuzz",
            dependencies: ["DrawbridgeCore", "Netfilter", "NetfilterModel"],
            path: "Tests/Fuzz/parsers", exclude: ["corpus", "dictionaries"], swiftSettings: swiftSettings),
    ]
)
