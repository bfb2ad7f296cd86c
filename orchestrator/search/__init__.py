"""How configs are proposed and trials stopped: the search space and every translation of its kinds
(`space`), the searcher and scheduler registries with their typed options and rules (`searchers`,
`schedulers`, `rules`), Ray subclasses that fix what cannot be configured away (`ray_schedulers`),
SMAC behind Ray's Searcher API (`smac`), and warm starts from an earlier run (`warmstart`)."""
