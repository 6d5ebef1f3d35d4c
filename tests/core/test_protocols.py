import numpy as np
import pytest

from oncomri.core import (
    GeometryError,
    MultiEchoProtocol,
    OncomriError,
    ProtocolError,
    ReadError,
    ValidationError,
    Volume,
    check_echo_times_plausible,
    to_seconds,
)


def test_echo_times_are_stored_in_seconds_read_only():
    p = MultiEchoProtocol([0.001, 0.002, 0.003])
    assert p.n_echoes == 3
    assert p.echo_times.dtype == np.float64
    with pytest.raises(ValueError):
        p.echo_times[0] = 5.0


@pytest.mark.parametrize(
    "te, words",
    [
        ([], "no echo times"),
        ([0.005], "single echo"),
        ([0.002, 0.002, 0.004], "appears twice"),
        ([0.004, 0.002, 0.006], "must increase"),
        ([0.002, np.nan], "finite"),
        ([-0.001, 0.002], "negative"),
        ([4.6, 9.2, 13.8], "milliseconds"),
        ([4.6e-6, 9.2e-6], "seconds"),
    ],
)
def test_invalid_echo_times_raise_protocol_error(te, words):
    with pytest.raises(ProtocolError, match=words):
        MultiEchoProtocol(te, source="sub-01.json")


def test_protocol_error_names_its_source():
    with pytest.raises(ProtocolError, match="^sub-01_echo-1.json:"):
        MultiEchoProtocol([0.01, 0.01], source="sub-01_echo-1.json")


def test_even_spacing_and_dropping_echoes():
    p = MultiEchoProtocol(np.linspace(0.001, 0.024, 12))
    assert p.evenly_spaced and p.echo_spacing == pytest.approx(0.023 / 11)
    q = MultiEchoProtocol([0.001, 0.002, 0.004])
    assert not q.evenly_spaced and q.echo_spacing is None
    assert p.drop_echoes(1).echo_times[0] == pytest.approx(p.echo_times[1])
    assert p.drop_echoes(1).n_echoes == 11


def test_unit_conversion_and_plausibility():
    np.testing.assert_allclose(to_seconds([4.6, 9.2], "ms"), [0.0046, 0.0092])
    np.testing.assert_allclose(to_seconds([460], "us"), [0.00046])
    with pytest.raises(ProtocolError, match="unknown time unit"):
        to_seconds([1.0], "min")
    check_echo_times_plausible([0.0046, 0.3])
    with pytest.raises(ProtocolError, match="milliseconds"):
        check_echo_times_plausible([4.6, 9.2], source="x.json")


def test_error_hierarchy_matches_builtin_exceptions():
    assert issubclass(ProtocolError, ValidationError)
    assert issubclass(ValidationError, ValueError) and issubclass(ValidationError, OncomriError)
    assert issubclass(GeometryError, ValueError)
    assert issubclass(ReadError, OSError) and issubclass(ReadError, OncomriError)


def test_volume_validates_affine_and_echo_count():
    data = np.zeros((4, 4, 2, 3), np.float32)
    v = Volume(data, np.diag([2.0, 2.0, 3.0, 1.0]), protocol=MultiEchoProtocol([0.01, 0.02, 0.03]))
    assert v.spatial_shape == (4, 4, 2)
    np.testing.assert_allclose(v.voxel_size, [2, 2, 3])
    with pytest.raises(GeometryError):
        Volume(data, np.eye(3))
    with pytest.raises(ValidationError, match="3 measurements"):
        Volume(data, np.eye(4), protocol=MultiEchoProtocol([0.01, 0.02]))
