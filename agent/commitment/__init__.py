"""Storage Commitment in the daemon (IHE RAD-10): which delivered images each archive has
committed to keep, the requests waiting for its report (`store`), and when requests are made
and what their results do (`service`). The protocol itself is agent.net.commitment; the
agent's SCP, which receives reports on a new association, is agent.net.scp."""
