"""Model families: the contract a family fulfils (`contract`: `Family`, the `Trial` it trains in),
the metric vocabulary every built-in family reports in (`metrics`), and how a spec's `family:` is
found (`registry`). The built-in families themselves live in `experiments/` and import only
`contract` and `metrics`."""
