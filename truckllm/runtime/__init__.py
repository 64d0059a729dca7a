"""The running config: the immutable snapshot, its holder, and the reloader that swaps it."""
