/// A key and its value as etcd stores them, with the revisions that tell when it was made and last changed.
public struct EtcdKeyValue: Sendable, Hashable {
    /// The key, decoded as UTF-8 (bytes that are not UTF-8 become U+FFFD; Drawbridge's keys are ASCII paths).
    public var key: String
    /// The value's bytes (Drawbridge stores JSON).
    public var value: [UInt8]
    /// The revision that created the key (0 in a delete event).
    public var createRevision: Int64
    /// The revision of the last change: the put, or for a delete event the delete.
    public var modRevision: Int64
    /// How many times the key was written since its creation.
    public var version: Int64
    /// The lease the key is attached to, if any: the key goes when the lease does.
    public var leaseID: Int64?

    /// A key-value pair from its parts.
    public init(
        key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64,
        leaseID: Int64? = nil
    ) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.leaseID = leaseID
    }
}

/// The keys under a prefix, all read at one revision.
public struct EtcdRange: Sendable, Hashable {
    /// The revision the keys were read at: a watch from `revision + 1` continues without gap or repeat.
    public var revision: Int64
    /// Sorted by key.
    public var keyValues: [EtcdKeyValue]

    /// A range from its parts.
    public init(revision: Int64, keyValues: [EtcdKeyValue]) {
        self.revision = revision
        self.keyValues = keyValues
    }
}

/// One change seen by a watch.
public struct EtcdEvent: Sendable, Hashable {
    /// A write or a removal.
    public enum Kind: Sendable, Hashable {
        case put
        case delete
    }

    /// Whether the key was written or removed.
    public var kind: Kind
    /// The key as it is after the change; for a delete, only key and ``EtcdKeyValue/modRevision`` (the revision of
    /// the delete) are set.
    public var keyValue: EtcdKeyValue

    /// An event from its parts.
    public init(kind: Kind, keyValue: EtcdKeyValue) {
        self.kind = kind
        self.keyValue = keyValue
    }

    /// The key that changed.
    public var key: String { keyValue.key }
    /// The new value; empty for a delete.
    public var value: [UInt8] { keyValue.value }
    /// The revision of this change.
    public var modRevision: Int64 { keyValue.modRevision }
}

/// One response of a watch: every event etcd sent together (one revision's changes are never split), or a sign of
/// progress.
public struct EtcdWatchResponse: Sendable, Hashable {
    /// What the response says.
    public enum Kind: Sendable, Hashable {
        /// etcd accepted the watch of ``EtcdWatchResponse/prefix``; events from its start revision follow.
        case created
        /// Changes under the prefix, in revision order.
        case events
        /// No change under the prefix up to ``EtcdWatchResponse/revision`` (a progress notification).
        case progress
    }

    /// Created, events, or progress.
    public var kind: Kind
    /// The watched prefix this response is about.
    public var prefix: String
    /// Empty unless ``kind`` is ``Kind/events``.
    public var events: [EtcdEvent]
    /// etcd's revision when it sent the response.
    public var revision: Int64
    /// Where a new watch of ``prefix`` has to start to miss nothing and repeat nothing: after the last event, after
    /// a progress notification's revision, or (for ``Kind/created``) the start revision itself, because the events
    /// from there may still be on their way.
    public var nextRevision: Int64

    /// A response from its parts.
    public init(kind: Kind, prefix: String, events: [EtcdEvent], revision: Int64, nextRevision: Int64) {
        self.kind = kind
        self.prefix = prefix
        self.events = events
        self.revision = revision
        self.nextRevision = nextRevision
    }
}

/// A lease: keys attached to it are deleted when it is revoked or expires.
public struct EtcdLease: Sendable, Hashable, CustomStringConvertible {
    /// etcd's lease ID.
    public var id: Int64
    /// The time to live etcd granted (it may round up: a TTL of 1 s is granted as 2 s).
    public var ttl: Duration

    /// A lease from its ID and TTL (the TTL only paces ``EtcdClient/keepAlive(_:onRenewal:)``).
    public init(id: Int64, ttl: Duration) {
        self.id = id
        self.ttl = ttl
    }

    /// The ID in hexadecimal, as etcdctl prints it.
    public var description: String { String(UInt64(bitPattern: id), radix: 16) }
}
