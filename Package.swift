// swift-tools-version:6.0
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
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        // C libraries and the small shim for what Swift cannot import. Only Netfilter imports CNftnl and CMnl.
        .systemLibrary(
            name: "CNftnl", path: "Sources/CNftnl", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev"])]),
        .systemLibrary(name: "CMnl", path: "Sources/CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .target(name: "CDrawbridgeLinux", path: "Sources/CDrawbridgeLinux"),

        // Pure logic: addresses, policy, grants, authorization, the diff between desired and actual kernel state.
        .target(name: "DrawbridgeCore", dependencies: [.product(name: "Yams", package: "Yams")]),
        // Knocking with SSH keys: keys, SSHSIG, the ssh-agent protocol, the knock packet, replay nonces. Bytes in,
        // values or typed errors out; no sockets, no files, no Foundation (FoundationEssentials at most).
        .target(
            name: "Knock",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ]),
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
        .testTarget(
            name: "KnockTests", dependencies: ["Knock", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "DrawbridgeCore", "TestSupport"]),
        .testTarget(
            name: "EndToEndTests", dependencies: ["DrawbridgeCore", "Netfilter", "TestSupport"]),
    ]
)
