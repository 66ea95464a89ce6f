// Placeholder until the sync and requester commands land.
print("drawbridge-etcd: not built yet")
