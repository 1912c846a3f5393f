"""Many workers, one service: the shared stream catalog and the stream leases, on JetStream
key-value buckets (``store``), and who should run what (``placement``)."""
