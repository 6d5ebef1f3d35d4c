"""The study engine: spec, database, pipeline and analyses of a whole therapy study.

- :mod:`~oncomri.study.spec`: the YAML study spec, validated with errors that
  name the spec line and field (``load_spec``); :mod:`~oncomri.study.template`
  writes a commented spec from a BIDS-like folder (``oncomri init``).
- :mod:`~oncomri.study.inputs`: preflight, resolving every session's files and
  checking ROI geometry before anything is written.
- :mod:`~oncomri.study.db`: the study database (SQLite or PostgreSQL).
- :mod:`~oncomri.study.tasks` and :mod:`~oncomri.study.pipeline`: the per-session
  work and the run on Dask (``run_study``, ``oncomri run``).
- :mod:`~oncomri.study.analysis`: the spec's statistical analyses on the tidy
  measurement table.
- :mod:`~oncomri.study.mapping`: scan loading and map fitting with provenance,
  shared with ``oncomri map``.
- :mod:`~oncomri.study.demo`: the built-in synthetic study written to disk.

Submodules are imported on use, so ``import oncomri.study`` stays light.
"""

from .design import Arm, StudyDesign, Subject, Timepoint

__all__ = ["Arm", "Timepoint", "Subject", "StudyDesign", "run_study", "load_spec"]


def run_study(*args, **kwargs):
    """See :func:`oncomri.study.pipeline.run_study`."""
    from .pipeline import run_study as _run

    return _run(*args, **kwargs)


def load_spec(path):
    """See :func:`oncomri.study.spec.load_spec`."""
    from .spec import load_spec as _load

    return _load(path)
