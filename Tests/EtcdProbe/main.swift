// etcd-probe: the Etcd client driven line by line, for the etcd tests.
//
//     nsenter --net=NAMESPACE etcd-probe --endpoint URL [--ca FILE] [--cert FILE --key FILE]
//         [--user NAME --password PASSWORD]
//
// Reads ProbeRequest JSON lines on standard input, writes ProbeReply JSON lines on standard output, and exits when
// its input ends. It runs inside the test's network namespace, so the client's sockets (made on whatever thread
// NIO or the concurrency pool picks) are there too.
import Etcd
import EtcdProbeProtocol
import Foundation
import Synchronization

/// Serializes writes of whole lines to standard output.
enum Output {
    static let lock = Mutex(())
}

func send(_ reply: ProbeReply) {
    var line = (try? JSONEncoder().encode(reply)) ?? Data("{}".utf8)
    line.append(0x0A)
    Output.lock.withLock { _ in FileHandle.standardOutput.write(line) }
}

func failure(_ error: EtcdError) -> ProbeFailure {
    ProbeFailure(
        code: String(describing: error.code), message: error.description, endpoint: error.endpoint?.description,
        retryable: error.isRetryable, compactRevision: error.compactRevision, prefix: error.prefix)
}

func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

func configuration(from arguments: [String]) throws -> EtcdConfiguration {
    var options: [String: String] = [:]
    var endpoints: [String] = []
    var index = 0
    while index + 1 < arguments.count {
        if arguments[index] == "--endpoint" {
            endpoints.append(arguments[index + 1])
        } else {
            options[String(arguments[index].dropFirst(2))] = arguments[index + 1]
        }
        index += 2
    }
    var tls: EtcdConfiguration.TLS?
    if options["ca"] != nil || options["cert"] != nil {
        tls = .init(certificateAuthorityFile: options["ca"], certificateFile: options["cert"], keyFile: options["key"])
    }
    let credentials = options["user"].map {
        EtcdConfiguration.Credentials(user: $0, password: options["password"] ?? "")
    }
    var configuration = try EtcdConfiguration(endpoints: endpoints, tls: tls, credentials: credentials)
    configuration.requestTimeout = .seconds(5)
    return configuration
}

/// Standard input as lines, read on a thread of its own so no concurrency thread blocks in read(2).
func inputLines() -> AsyncStream<String> {
    let (lines, continuation) = AsyncStream<String>.makeStream()
    let reader = Thread {
        while let line = readLine() { continuation.yield(line) }
        continuation.finish()
    }
    reader.start()
    return lines
}

func perform(_ request: ProbeRequest, with client: EtcdClient) async {
    let id = request.id
    do throws(EtcdError) {
        switch request.command {
        case .range(let prefix, let revision):
            let range = try await client.range(prefix: prefix, revision: revision)
            let pairs = range.keyValues.map {
                ProbeKeyValue(
                    key: $0.key, value: text($0.value), createRevision: $0.createRevision,
                    modRevision: $0.modRevision, leaseID: $0.leaseID)
            }
            send(.range(id: id, revision: range.revision, keyValues: pairs))
        case .put(let key, let value, let lease):
            let revision = try await client.put(
                key, value: Array(value.utf8), lease: lease.map { EtcdLease(id: $0, ttl: .zero) })
            send(.revision(id: id, revision: revision))
        case .delete(let key):
            let (revision, existed) = try await client.delete(key)
            send(.deleted(id: id, revision: revision, existed: existed))
        case .grantLease(let ttl):
            let lease = try await client.grantLease(ttl: .seconds(ttl))
            send(.lease(id: id, lease: lease.id, ttlSeconds: lease.ttl.components.seconds))
        case .revokeLease(let lease):
            try await client.revokeLease(EtcdLease(id: lease, ttl: .zero))
            send(.done(id: id))
        case .keepAlive(let lease, let ttl):
            send(.done(id: id))
            try await client.keepAlive(EtcdLease(id: lease, ttl: .seconds(ttl))) { ttl in
                send(.renewal(id: id, ttlSeconds: ttl.components.seconds))
            }
            send(.stopped(id: id))
        case .watch(let revisions):
            send(.done(id: id))
            for try await response in client.watch(fromRevisions: revisions) {
                let events = response.events.map {
                    ProbeEvent(
                        kind: $0.kind == .put ? "put" : "delete", key: $0.key, value: text($0.value),
                        modRevision: $0.modRevision)
                }
                let kind =
                    switch response.kind {
                    case .created: "created"
                    case .events: "events"
                    case .progress: "progress"
                    }
                send(
                    .watchResponse(
                        id: id,
                        response: ProbeWatchResponse(
                            kind: kind, prefix: response.prefix, events: events, revision: response.revision,
                            nextRevision: response.nextRevision)))
            }
            send(.stopped(id: id))
        case .stop:
            break  // handled by the dispatcher, which owns the tasks
        }
    } catch {
        send(.failure(id: id, failure: failure(error)))
    }
}

let client: EtcdClient
do {
    client = try EtcdClient(configuration: configuration(from: Array(CommandLine.arguments.dropFirst())))
} catch let error as EtcdError {
    send(.failure(id: 0, failure: failure(error)))
    exit(1)
} catch {
    FileHandle.standardError.write(Data("etcd-probe: \(error)\n".utf8))
    exit(2)
}

await withTaskGroup(of: Void.self) { group in
    group.addTask {
        do throws(EtcdError) { try await client.run() } catch { send(.failure(id: 0, failure: failure(error))) }
    }
    send(.ready(id: 0))
    let decoder = JSONDecoder()
    var running: [Int: Task<Void, Never>] = [:]
    for await line in inputLines() {
        guard let request = try? decoder.decode(ProbeRequest.self, from: Data(line.utf8)) else {
            FileHandle.standardError.write(Data("etcd-probe: not a request: \(line)\n".utf8))
            continue
        }
        if case .stop(let target) = request.command {
            running.removeValue(forKey: target)?.cancel()
            send(.done(id: request.id))
            continue
        }
        running[request.id] = Task { await perform(request, with: client) }
    }
    for task in running.values { task.cancel() }
    for task in running.values { await task.value }
    client.shutdown()
}
