"""`python -m train ...` / `torchrun --nproc_per_node N -m train ...`: the train-student CLI."""

from train.cli import main

main()
