"""Exact and branch-and-bound proofs: ``bab`` (ReLU splits with beta-CROWN multipliers) and
``milp`` (HiGHS MILP for small ReLU networks)."""
