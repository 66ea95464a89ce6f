// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "drawbridge",
    products: [
        .library(name: "DrawbridgeCore", targets: ["DrawbridgeCore"]),
        .library(name: "Netfilter", targets: ["Netfilter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
    ],
    targets: [
        // C libraries and the small shim for what Swift cannot import. Only the Netfilter module imports these.
        .systemLibrary(
            name: "CNftnl", path: "Sources/CNftnl", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev"])]),
        .systemLibrary(name: "CMnl", path: "Sources/CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .target(name: "CDrawbridgeLinux", path: "Sources/CDrawbridgeLinux"),

        // Pure logic: addresses, services, policy, grants, the diff between desired and actual kernel state.
        .target(name: "DrawbridgeCore"),
        // The one OS layer for nftables: netlink connection, transactions, the drawbridge table.
        .target(name: "Netfilter", dependencies: ["DrawbridgeCore", "CNftnl", "CMnl", "CDrawbridgeLinux"]),

        .executableTarget(
            name: "drawbridge-bench",
            dependencies: ["Netfilter", "DrawbridgeCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        .target(name: "TestSupport", dependencies: ["Netfilter", "DrawbridgeCore"], path: "Tests/TestSupport"),
        .testTarget(name: "DrawbridgeCoreTests", dependencies: ["DrawbridgeCore"]),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "DrawbridgeCore", "TestSupport"]),
    ]
)
