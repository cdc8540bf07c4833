"""The server's HTTP and websocket routes: REST (:mod:`.api`), figures (:mod:`.figure_api`),
probe ingest (:mod:`.ingest`), browser live updates (:mod:`.live`) and pages (:mod:`.pages`)."""
