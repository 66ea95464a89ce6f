// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "drawbridge",
    products: [
        .executable(name: "drawbridged", targets: ["drawbridged"]),
        .executable(name: "drawbridge", targets: ["drawbridge"]),
        .executable(name: "drawbridge-bench", targets: ["drawbridge-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        // No traits: the default ones import full Foundation (binary-delimited streams), which the agent must not
        // carry. This is why the tools version is 6.1.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0", traits: []),
    ],
    targets: [
        // C libraries and the small shim for what Swift cannot import. Only Netfilter imports CNftnl and CMnl.
        .systemLibrary(
            name: "CNftnl", path: "Sources/CNftnl", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev"])]),
        .systemLibrary(name: "CMnl", path: "Sources/CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .target(name: "CDrawbridgeLinux", path: "Sources/CDrawbridgeLinux"),

        // Pure logic: addresses, policy, grants, authorization, the diff between desired and actual kernel state.
        .target(name: "DrawbridgeCore", dependencies: [.product(name: "Yams", package: "Yams")]),
        // The one OS layer for nftables: netlink connection, transactions, the drawbridge table.
        .target(name: "Netfilter", dependencies: ["DrawbridgeCore", "CNftnl", "CMnl", "CDrawbridgeLinux"]),
        // The agent's services: local API, grant store, audit, grants files, tamper repair.
        .target(
            name: "DrawbridgeAgent",
            dependencies: [
                "DrawbridgeCore", "Netfilter", "CDrawbridgeLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]),
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
        // The etcd client the agent uses to follow grants: range, watch, put, delete, leases; no protobuf type in its
        // API.
        .target(
            name: "Etcd",
            dependencies: [
                "EtcdAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]),

        .executableTarget(
            name: "drawbridged",
            dependencies: [
                "DrawbridgeAgent", "Netfilter", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "drawbridge",
            dependencies: [
                "DrawbridgeCore", "Netfilter", "CDrawbridgeLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "drawbridge-bench",
            dependencies: [
                "Netfilter", "DrawbridgeCore", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .target(name: "TestSupport", dependencies: ["Netfilter", "DrawbridgeCore"], path: "Tests/TestSupport"),
        .testTarget(name: "DrawbridgeCoreTests", dependencies: ["DrawbridgeCore"]),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "DrawbridgeCore", "TestSupport"]),
        .testTarget(
            name: "EndToEndTests", dependencies: ["DrawbridgeCore", "Netfilter", "TestSupport"]),
        // The etcd tests run etcd and etcd-probe (the Etcd client driven over stdin/stdout) inside a throwaway
        // network namespace; the two share the message types of EtcdProbeProtocol.
        .target(name: "EtcdProbeProtocol", path: "Tests/EtcdProbeProtocol"),
        .executableTarget(name: "etcd-probe", dependencies: ["Etcd", "EtcdProbeProtocol"], path: "Tests/EtcdProbe"),
        .testTarget(name: "EtcdTests", dependencies: ["Etcd", "EtcdProbeProtocol", "Netfilter", "TestSupport"]),
    ]
)
