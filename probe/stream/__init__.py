"""Getting snapshots to the server, torch-free: ``transport`` (sender thread, acks,
retries), ``spool`` (messages waiting on disk) and ``upload`` (``curvscope upload``)."""
