import EtcdAPI
import GRPCCore
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The responses of a watch, as they arrive; made by ``EtcdClient/watch(prefix:fromRevision:)`` and its siblings.
///
/// The stream opens when iteration starts and closes when the iterating task is cancelled or stops iterating. It
/// never ends quietly otherwise: a lost connection, a restarted member, a member without leader all throw a
/// retryable ``EtcdError``, and a compaction past a prefix's revision throws ``EtcdError/Code/compacted`` with the
/// compact revision. Resume with ``EtcdClient/watch(fromRevisions:)`` from each prefix's last
/// ``EtcdWatchResponse/nextRevision``; after a compaction, list again first.
///
/// Progress notifications are requested (etcd sends them every `--experimental-watch-progress-notify-interval`,
/// 10 minutes by default), so a quiet prefix's resume point moves too.
public struct EtcdWatch: AsyncSequence, Sendable {
    public typealias Element = EtcdWatchResponse
    public typealias Failure = EtcdError

    struct Start: Sendable {
        var prefix: String
        var revision: Int64
    }

    let client: EtcdClient
    let starts: [Start]

    /// Opens the watch stream; each iterator has a stream of its own.
    public func makeAsyncIterator() -> Iterator {
        // Unbounded: a response is never dropped, and a watch of grants carries little.
        let (stream, continuation) = AsyncThrowingStream<EtcdWatchResponse, any Error>.makeStream()
        let session = WatchSession(client: client, starts: starts)
        let task = Task { await session.run(into: continuation) }
        continuation.onTermination = { _ in task.cancel() }
        return Iterator(base: stream.makeAsyncIterator())
    }

    /// Hands out the responses of one watch stream.
    public struct Iterator: AsyncIteratorProtocol {
        public typealias Failure = EtcdError

        var base: AsyncThrowingStream<EtcdWatchResponse, any Error>.AsyncIterator

        /// The next response; nil once the iterating task is cancelled.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(EtcdError) -> EtcdWatchResponse?
        {
            do {
                return try await base.next(isolation: actor)
            } catch let error as EtcdError {
                throw error
            } catch {
                throw EtcdError(.other, operation: "watching", detail: EtcdError.describe(error))
            }
        }

        /// The next response; nil once the iterating task is cancelled.
        public mutating func next() async throws(EtcdError) -> EtcdWatchResponse? {
            try await next(isolation: nil)
        }
    }
}

/// One watch: opens the gRPC stream, creates a watcher per prefix, and turns etcd's responses into
/// ``EtcdWatchResponse``s or an ``EtcdError``.
private final class WatchSession: Sendable {
    let client: EtcdClient
    /// Each prefix's resume revision, advanced by every response, so a retry after a rejected token goes on where
    /// the stream stopped.
    let starts: Mutex<[EtcdWatch.Start]>

    init(client: EtcdClient, starts: [EtcdWatch.Start]) {
        self.client = client
        self.starts = Mutex(starts)
    }

    /// How one stream ended.
    enum Outcome: Sendable {
        /// A create request was refused (cancel_reason), for the prefix at this index.
        case refused(index: Int, reason: String)
        /// etcd cancelled a running watcher: compacted past its revision, or for the reason given.
        case cancelled(index: Int, compactRevision: Int64, reason: String)
        /// The response stream ended without an error.
        case ended
    }

    func run(into continuation: AsyncThrowingStream<EtcdWatchResponse, any Error>.Continuation) async {
        var renewedToken = false
        while true {
            let current = starts.withLock { $0 }
            let outcome: Outcome
            do {
                outcome = try await stream(current, continuation)
            } catch {
                if Task.isCancelled {
                    continuation.finish()
                } else {
                    continuation.finish(throwing: client.mapped(error, operation: operation(current)))
                }
                return
            }
            if Task.isCancelled {
                continuation.finish()
                return
            }
            switch outcome {
            case .refused(let index, let reason):
                if !renewedToken, client.configuration.credentials != nil,
                    EtcdError.isTokenRejection(message: reason)
                {
                    // The token expired (simple tokens do after --auth-token-ttl unused) or etcd lost it:
                    // authenticate again and reopen, once.
                    client.forgetToken()
                    renewedToken = true
                    continue
                }
                let start = current[index]
                continuation.finish(
                    throwing: EtcdError(
                        cancelReason: reason, endpoint: client.endpoint, operation: operation([start]),
                        user: client.user, prefix: start.prefix))
            case .cancelled(let index, let compactRevision, let reason):
                let start = starts.withLock { $0[index] }
                if compactRevision > 0 {
                    continuation.finish(
                        throwing: EtcdError(
                            .compacted, endpoint: client.endpoint, operation: operation([start]), user: client.user,
                            compactRevision: compactRevision, prefix: start.prefix))
                } else if reason.isEmpty {
                    // Cancelled without a word: nothing says the watch cannot simply be resumed.
                    continuation.finish(
                        throwing: EtcdError(
                            .unavailable, endpoint: client.endpoint, operation: operation([start]), user: client.user,
                            detail: "the member cancelled the watch", prefix: start.prefix))
                } else {
                    continuation.finish(
                        throwing: EtcdError(
                            cancelReason: reason, endpoint: client.endpoint, operation: operation([start]),
                            user: client.user, prefix: start.prefix))
                }
            case .ended:
                continuation.finish(
                    throwing: EtcdError(
                        .unavailable, endpoint: client.endpoint, operation: operation(current), user: client.user,
                        detail: "the member closed the watch stream"))
            }
            return
        }
    }

    private func operation(_ starts: [EtcdWatch.Start]) -> String {
        "watching " + starts.map { "\($0.prefix) from revision \($0.revision)" }.joined(separator: ", ")
    }

    /// One gRPC Watch stream: sends a create request per prefix, then relays responses until something ends it.
    private func stream(
        _ starts: [EtcdWatch.Start], _ continuation: AsyncThrowingStream<EtcdWatchResponse, any Error>.Continuation
    ) async throws -> Outcome {
        let metadata = try await client.requestMetadata(operation: operation(starts))
        let watch = Etcdserverpb_Watch.Client(wrapping: client.grpc)
        // Keeps the request side open while responses flow: a half-closed stream would look like a finished
        // client to etcd's proxies, and there may be cancel requests to send one day.
        let (responsesDone, responsesDoneContinuation) = AsyncStream<Never>.makeStream()
        return try await watch.watch(metadata: metadata, options: client.streamOptions) { writer in
            for (index, start) in starts.enumerated() {
                var create = Etcdserverpb_WatchCreateRequest()
                let (key, end) = EtcdClient.keyRange(prefix: start.prefix)
                create.key = key
                create.rangeEnd = end
                create.startRevision = start.revision
                create.progressNotify = true
                create.watchID = Int64(index + 1)
                var request = Etcdserverpb_WatchRequest()
                request.createRequest = create
                try await writer.write(request)
            }
            for await _ in responsesDone {}
        } onResponse: { response in
            defer { responsesDoneContinuation.finish() }
            // Create requests are answered in order; a refused one comes back with watch ID -1, so the order, not
            // the ID, says which prefix an answer is for.
            var awaitingCreation = Array(starts.indices)
            for try await message in response.messages {
                if message.created {
                    guard !awaitingCreation.isEmpty else { continue }
                    let index = awaitingCreation.removeFirst()
                    if message.canceled { return .refused(index: index, reason: message.cancelReason) }
                    let start = self.starts.withLock { $0[index] }
                    continuation.yield(
                        EtcdWatchResponse(
                            kind: .created, prefix: start.prefix, events: [], revision: message.header.revision,
                            nextRevision: start.revision))
                    continue
                }
                // Our watch IDs are index + 1; -1 answers a progress request for the whole stream, which etcd 3.4
                // sends without checking that every watcher caught up, so it proves nothing about any prefix.
                let index = Int(message.watchID) - 1
                guard starts.indices.contains(index) else { continue }
                if message.canceled {
                    return .cancelled(
                        index: index, compactRevision: message.compactRevision, reason: message.cancelReason)
                }
                let prefix = starts[index].prefix
                let reply: EtcdWatchResponse
                if let last = message.events.last {
                    reply = EtcdWatchResponse(
                        kind: .events, prefix: prefix, events: message.events.map(EtcdEvent.init),
                        revision: message.header.revision, nextRevision: last.kv.modRevision + 1)
                } else {
                    // A progress notification: etcd sends these only to watchers that have caught up, so every
                    // event up to the header revision has been delivered.
                    reply = EtcdWatchResponse(
                        kind: .progress, prefix: prefix, events: [], revision: message.header.revision,
                        nextRevision: message.header.revision + 1)
                }
                self.starts.withLock { $0[index].revision = max($0[index].revision, reply.nextRevision) }
                continuation.yield(reply)
            }
            return .ended
        }
    }
}

extension EtcdEvent {
    init(_ message: Mvccpb_Event) {
        self.init(kind: message.type == .delete ? .delete : .put, keyValue: EtcdKeyValue(message.kv))
    }
}
