"""Helpers shared by the tests and the benchmarks: log and fact builders, test configurations,
a private Postfix, HTTP endpoints for notifications, a hostile journal. `bench/` may import this
package; nothing here imports `bench/`."""
