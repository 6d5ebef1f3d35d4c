"""Study power for comparisons of an imaging biomarker (ΔR2*, tumour volume, ...).

Two designs, both two-sided t tests:

two-sample
    treated vs control arms. Student's t (one common SD) or, when the arms'
    SDs differ, Welch's t with the Welch–Satterthwaite degrees of freedom
    (Welch, Biometrika 1947;34:28; Satterthwaite, Biometrics Bull
    1946;2:110).
paired
    the same subjects before and after (e.g. ΔR2* pre/post labelled-cell
    delivery), tested on the within-subject differences.

Power is the probability that the test rejects at level α when the true
mean difference is ``effect``: with noncentrality ``δ = effect / SE`` and
``c`` the two-sided critical value of the central t with ``df`` degrees of
freedom, ``power = P(T'_{df,δ} > c) + P(T'_{df,δ} < -c)`` (noncentral t;
Cohen, Statistical Power Analysis for the Behavioral Sciences, 2nd ed.,
Erlbaum 1988, ch. 2). ``SE = sd sqrt(1/n1 + 1/n2)`` (Student),
``sqrt(sd1²/n1 + sd2²/n2)`` (Welch), ``sd_diff / sqrt(n)`` (paired). The
noncentral-t power is computed by statsmodels (``TTestIndPower``,
``TTestPower``); every result also carries the normal approximation
``Φ(δ - z_{1-α/2}) + Φ(-δ - z_{1-α/2})`` and the matching sample size
``n1 = (z_{1-α/2} + z_{power})² (sd1² + sd2²/ratio) / effect²`` as a
cross-check. Sample sizes are the smallest whole numbers that reach the
target power. Cohen's worked example (d = 0.5, α = 0.05 two-sided,
power 0.80) gives 64 per group (Cohen, Psychol Bull 1992;112:155, Table 2).

Effect and SDs are in the unit of the biomarker (1/s for ΔR2*, mm³ for
volumes); pass ``unit`` to have it in the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import optimize, stats

from ..core.checks import finite_float as _number
from ..core.checks import positive_float as _positive
from ..core.errors import MissingDependencyError, ValidationError

__all__ = [
    "PowerResult",
    "SampleSizeResult",
    "power_two_sample",
    "sample_size_two_sample",
    "power_paired",
    "sample_size_paired",
]

_N_MAX = 1e7  # largest sample size searched per arm


def _statsmodels_power():
    try:
        from statsmodels.stats.power import TTestIndPower, TTestPower
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "study power needs statsmodels; install it with: pip install 'statsmodels>=0.14'"
        ) from None
    return TTestIndPower(), TTestPower()


def _alpha(alpha):
    a = _number("alpha", alpha)
    if not 0 < a < 1:
        raise ValidationError(f"alpha must lie strictly between 0 and 1 (e.g. 0.05), got {a:g}")
    return a


def _effect(effect):
    e = _number("effect", effect)
    if e == 0:
        raise ValidationError("effect must be non-zero: a zero difference has no power beyond alpha")
    return abs(e)


def _target_power(power, alpha):
    p = _number("power", power)
    if not alpha < p < 1:
        raise ValidationError(f"power must lie between alpha ({alpha:g}) and 1 (e.g. 0.8), got {p:g}")
    return p


def _count(name, value, minimum):
    v = _number(name, value)
    if v != int(v) or v < minimum:
        raise ValidationError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(v)


@dataclass(frozen=True)
class PowerResult:
    """Power of a two-sided t test (see :mod:`oncomri.sim.power`).

    Attributes
    ----------
    design : {'two-sample', 'paired'}
    test : {'student', 'welch', 'paired'}
    effect : float, true mean difference (``unit``; absolute value)
    sd : float, SD of arm 1 (two-sample) or of the within-subject differences (paired)
    sd_other : float or None, SD of arm 2 (Welch only)
    effect_size_d : float
        Standardised effect: effect / sd (Student, paired), effect /
        sqrt((sd² + sd_other²) / 2) (Welch).
    alpha : float, two-sided
    n_per_arm : int, arm 1 (two-sample) or pairs (paired)
    n_other_arm : float or None, arm 2 (``ratio · n_per_arm``)
    df : float, degrees of freedom of the t test
    noncentrality : float, effect / SE
    power : float, noncentral t (statsmodels)
    power_normal_approx : float
    unit : str
    """

    design: str
    test: str
    effect: float
    sd: float
    sd_other: float | None
    effect_size_d: float
    alpha: float
    n_per_arm: int
    n_other_arm: float | None
    df: float
    noncentrality: float
    power: float
    power_normal_approx: float
    unit: str = ""

    def as_dict(self) -> dict:
        """Plain JSON-able values; ``unit`` names the unit of effect and SDs."""
        return asdict(self)


@dataclass(frozen=True)
class SampleSizeResult:
    """Smallest sample size reaching a target power (see :mod:`oncomri.sim.power`).

    Attributes
    ----------
    design, test, effect, sd, sd_other, effect_size_d, alpha, unit : see :class:`PowerResult`
    target_power : float
    n_per_arm : int, arm 1 (two-sample) or pairs (paired), rounded up
    n_other_arm : int or None, arm 2, ``ceil(ratio · n_per_arm)``
    n_total : int, all subjects
    n_per_arm_exact : float, the non-integer n at which the power equals the target
    achieved_power : float, power at the whole-number sample sizes
    n_per_arm_normal_approx : float, the normal-approximation n (not rounded)
    """

    design: str
    test: str
    effect: float
    sd: float
    sd_other: float | None
    effect_size_d: float
    alpha: float
    target_power: float
    n_per_arm: int
    n_other_arm: int | None
    n_total: int
    n_per_arm_exact: float
    achieved_power: float
    n_per_arm_normal_approx: float
    unit: str = ""

    def as_dict(self) -> dict:
        """Plain JSON-able values; ``unit`` names the unit of effect and SDs."""
        return asdict(self)


# --------------------------------------------------------------------------
# Two-sample
# --------------------------------------------------------------------------

def _two_sample_terms(effect, sd1, sd2, n1, ratio, welch):
    """df, noncentrality and the statsmodels effect size for arm sizes n1, ratio·n1."""
    n2 = ratio * n1
    if welch:
        v1, v2 = sd1 * sd1 / n1, sd2 * sd2 / n2
        se = math.sqrt(v1 + v2)
        df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    else:
        se = sd1 * math.sqrt(1.0 / n1 + 1.0 / n2)
        df = n1 + n2 - 2.0
    nc = effect / se
    # statsmodels' noncentrality is d sqrt(n1 n2 / (n1 + n2)); choose d to match
    d_equiv = nc / math.sqrt(n1 * n2 / (n1 + n2))
    return df, nc, d_equiv


def _normal_power(nc, alpha):
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    return float(stats.norm.cdf(nc - z) + stats.norm.cdf(-nc - z))


def _two_sample_power_value(effect, sd1, sd2, n1, ratio, alpha, welch):
    ind, _ = _statsmodels_power()
    df, nc, d_equiv = _two_sample_terms(effect, sd1, sd2, n1, ratio, welch)
    p = ind.power(effect_size=d_equiv, nobs1=n1, alpha=alpha, ratio=ratio, df=df,
                  alternative="two-sided")
    return float(p), df, nc


def _two_sample_inputs(effect, sd, sd_other, ratio, alpha):
    effect = _effect(effect)
    sd1 = _positive("sd", sd)
    welch = sd_other is not None
    sd2 = _positive("sd_other", sd_other) if welch else sd1
    ratio = _positive("ratio", ratio)
    alpha = _alpha(alpha)
    d = effect / (math.sqrt((sd1 * sd1 + sd2 * sd2) / 2.0) if welch else sd1)
    return effect, sd1, sd2, welch, ratio, alpha, d


def power_two_sample(*, effect, sd, n_per_arm, alpha=0.05, ratio=1.0, sd_other=None,
                     unit: str = "") -> PowerResult:
    """Power of a two-sided two-sample t test (Student, or Welch when ``sd_other`` is given).

    Parameters
    ----------
    effect : float
        True difference of the arm means, in the biomarker's unit (sign ignored).
    sd : float
        SD of the biomarker in arm 1 (in both arms for Student's t), same unit.
    n_per_arm : int
        Subjects in arm 1 (>= 2).
    alpha : float
        Two-sided significance level.
    ratio : float
        Arm 2 size / arm 1 size (default 1: equal arms).
    sd_other : float, optional
        SD in arm 2; given, the test is Welch's with Welch–Satterthwaite df.
    unit : str
        Unit of ``effect`` and SDs, copied to the result.

    Returns
    -------
    PowerResult

    References
    ----------
    Cohen, Statistical Power Analysis for the Behavioral Sciences, 2nd ed.,
    1988; Welch, Biometrika 1947;34:28. Computed with statsmodels'
    ``TTestIndPower`` (noncentral t).
    """
    effect, sd1, sd2, welch, ratio, alpha, d = _two_sample_inputs(effect, sd, sd_other, ratio, alpha)
    n1 = _count("n_per_arm", n_per_arm, 2)
    if ratio * n1 < 2:
        raise ValidationError(f"ratio={ratio:g} leaves arm 2 with {ratio * n1:g} < 2 subjects")
    p, df, nc = _two_sample_power_value(effect, sd1, sd2, n1, ratio, alpha, welch)
    return PowerResult("two-sample", "welch" if welch else "student", effect, sd1,
                       sd2 if welch else None, d, alpha, n1, ratio * n1, df, nc, p,
                       _normal_power(nc, alpha), unit)


def _smallest_n(power_of_n, target, n_min):
    """Smallest real n >= n_min with power_of_n(n) >= target (power increases with n)."""
    if power_of_n(n_min) >= target:
        return float(n_min)
    hi = 2.0 * n_min
    while power_of_n(hi) < target:
        hi *= 2.0
        if hi > _N_MAX:
            raise ValidationError(
                f"more than {_N_MAX:.0e} subjects per arm would be needed; the effect is too small "
                "for the SD")
    return float(optimize.brentq(lambda n: power_of_n(n) - target, hi / 2.0 if hi > 2 * n_min else n_min,
                                 hi, xtol=1e-10, rtol=1e-12))


def sample_size_two_sample(*, effect, sd, power=0.80, alpha=0.05, ratio=1.0, sd_other=None,
                           unit: str = "") -> SampleSizeResult:
    """Subjects per arm for a two-sided two-sample t test to reach ``power``.

    Parameters as :func:`power_two_sample`, with ``power`` the target
    (between ``alpha`` and 1, default 0.80). Arm 1 gets ``n_per_arm``
    subjects, arm 2 ``ceil(ratio · n_per_arm)``.

    Returns
    -------
    SampleSizeResult
        Whole-number sizes, the exact (non-integer) solution, the power
        achieved and the normal-approximation n,
        ``(z_{1-α/2} + z_power)² (sd² + sd_other²/ratio) / effect²``.

    Examples
    --------
    Cohen's medium effect (Psychol Bull 1992;112:155, Table 2):

    >>> sample_size_two_sample(effect=0.5, sd=1.0).n_per_arm   # doctest: +SKIP
    64
    """
    effect, sd1, sd2, welch, ratio, alpha, d = _two_sample_inputs(effect, sd, sd_other, ratio, alpha)
    target = _target_power(power, alpha)
    n_min = max(2.0, 2.0 / ratio)

    def power_of(n):
        return _two_sample_power_value(effect, sd1, sd2, n, ratio, alpha, welch)[0]

    n_exact = _smallest_n(power_of, target, n_min)
    n1 = max(math.ceil(n_exact - 1e-9), math.ceil(n_min))
    n2 = math.ceil(ratio * n1 - 1e-9)
    achieved = _two_sample_power_value(effect, sd1, sd2, n1, n2 / n1, alpha, welch)[0]
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(target)
    n_normal = z * z * (sd1 * sd1 + sd2 * sd2 / ratio) / (effect * effect)
    return SampleSizeResult("two-sample", "welch" if welch else "student", effect, sd1,
                            sd2 if welch else None, d, alpha, target, n1, n2, n1 + n2,
                            n_exact, achieved, float(n_normal), unit)


# --------------------------------------------------------------------------
# Paired
# --------------------------------------------------------------------------

def _paired_power_value(d, n, alpha):
    _, one = _statsmodels_power()
    return float(one.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"))


def power_paired(*, effect, sd_difference, n_pairs, alpha=0.05, unit: str = "") -> PowerResult:
    """Power of a two-sided paired t test (one-sample t on the within-subject differences).

    Parameters
    ----------
    effect : float
        True mean of the within-subject differences (e.g. post - pre ΔR2*),
        in the biomarker's unit (sign ignored).
    sd_difference : float
        SD of the within-subject differences, same unit (not the SD of
        either timepoint: ``sd_diff² = sd_pre² + sd_post² - 2 ρ sd_pre sd_post``).
    n_pairs : int
        Subjects with both measurements (>= 2).
    alpha : float
        Two-sided significance level.
    unit : str

    Returns
    -------
    PowerResult
        ``n_per_arm`` is the number of pairs; ``df = n - 1``.

    References
    ----------
    Cohen 1988, ch. 2 (d = effect / sd_difference); statsmodels' ``TTestPower``.
    """
    effect = _effect(effect)
    sd = _positive("sd_difference", sd_difference)
    alpha = _alpha(alpha)
    n = _count("n_pairs", n_pairs, 2)
    d = effect / sd
    nc = d * math.sqrt(n)
    return PowerResult("paired", "paired", effect, sd, None, d, alpha, n, None, n - 1.0, nc,
                       _paired_power_value(d, n, alpha), _normal_power(nc, alpha), unit)


def sample_size_paired(*, effect, sd_difference, power=0.80, alpha=0.05,
                       unit: str = "") -> SampleSizeResult:
    """Pairs needed for a two-sided paired t test to reach ``power``.

    Parameters as :func:`power_paired`, with ``power`` the target.
    The normal approximation is ``n = (z_{1-α/2} + z_power)² sd_diff² / effect²``.

    Returns
    -------
    SampleSizeResult
        ``n_per_arm`` and ``n_total`` are the number of pairs.
    """
    effect = _effect(effect)
    sd = _positive("sd_difference", sd_difference)
    alpha = _alpha(alpha)
    target = _target_power(power, alpha)
    d = effect / sd
    n_exact = _smallest_n(lambda n: _paired_power_value(d, n, alpha), target, 2.0)
    n = max(math.ceil(n_exact - 1e-9), 2)
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(target)
    return SampleSizeResult("paired", "paired", effect, sd, None, d, alpha, target, n, None, n,
                            n_exact, _paired_power_value(d, n, alpha),
                            float(z * z / (d * d)), unit)
