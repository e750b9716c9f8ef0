"""hpsearch's test suite (the README's Test section says how to run it)."""

import os

# Every test process, and every process a test starts, trains on one thread (unless the caller says otherwise):
# pytest-xdist runs two test processes on a 2-core machine, and two-thread trainers side by side would
# oversubscribe the cores and stretch the waits the fault tests time. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
