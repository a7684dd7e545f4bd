"""Figures the reliability proofs report, printed at the end of a run for docs/RELIABILITY.md.

A proof calls `record("200 activations against quota 10, two servers", requests=1000,
granted=50, refused=950, server_errors=0)`; the run's summary lists every record, so the figures
the document quotes come from a real CI run's output rather than from memory."""

_records: list[tuple[str, dict]] = []


def record(proof: str, **figures) -> None:
    _records.append((proof, figures))


def failed_so_far(request) -> int:
    """How many tests of the run have failed until now: a module's figures that its tests assert (no
    5xx, nothing changed) hold only if none of its own failed."""
    return request.session.testsfailed


def asserted(request, failed_before: int, value=0):
    """A figure every test of the module asserted, as the run showed it: `value` when none of them
    failed since `failed_before`, else how many did."""
    failed = failed_so_far(request) - failed_before
    return value if failed == 0 else f"not shown, {failed} test(s) failed"


def pytest_terminal_summary(terminalreporter):
    if not _records:
        return
    terminalreporter.section("reliability figures")
    for proof, figures in _records:
        shown = ", ".join(f"{name}={value}" for name, value in figures.items())
        terminalreporter.write_line(f"{proof}: {shown}")
