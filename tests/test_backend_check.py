"""The backend agreement report that `deeprnn demo` prints."""
from deeprnn_cuda import _native
from deeprnn_cuda.backend_check import compare_backends


def test_compare_backends_reports_every_available_backend_in_agreement():
    reports = compare_backends(layers=3, channels=2, frames=3, batch=2, size=5, repeats=1)
    names = [r.backend for r in reports]
    assert names[0] == "reference" and reports[0].max_rel_error == 0
    assert ("native" in names) == _native.is_available()
    for r in reports:
        assert r.seconds > 0 and r.max_rel_error < 1e-4, r
        assert r.backend in r.line(reports[0].seconds)
