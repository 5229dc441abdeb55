"""``bms campaign``: fault matrices and Monte-Carlo sweeps of emulated packs (issue 13).

A campaign is a validated spec (:mod:`.spec`: pack, scenarios, faults, seeds, initial SOC
errors, ambient temperatures, duration) whose runs are independent emulated packs over
``emu://`` ports in the sim clock, each through the real controller, codec and client, each in
a child process of its own (:mod:`.runner`: killed at its timeout, its crash recorded). The runs
go to an executor (:mod:`.executors`: a local pool or Dask distributed, one interface); each
result is a JSON file keyed by a hash of the run's spec, so a campaign started again skips the
runs done (:mod:`.engine`); the table and the report (:mod:`.report`) are built from them.
docs/campaign.md has the format and the figures.
"""
