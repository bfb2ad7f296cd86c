"""The driver: one run folder's life. `driver` (`hpo run`) and `resume` (`hpo resume`) claim the folder
and share `lifecycle` (hold Ray and the signals, fit the Tuner that `tuner` builds, conclude), how a
run ended (`outcome`), the refit after the search (`refit`), Tune's callbacks (`callbacks`), the
live progress (`progress`), Ctrl-C and SIGTERM (`signals`), checkpoint pruning (`checkpoints`),
starting or joining Ray (`ray_local`), and what a run prints at its end (`summary`)."""
