"""`pgolf ablate`: run variants of a recipe (plugins toggled, values swept) on several seeds and
report what each technique is worth with the package's own Welch statistics. Resumable: each
(variant, seed) is one `pgolf run` subprocess into its own directory, finished once its
`summary.json` exists."""
