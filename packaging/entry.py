"""The one-file executable's entry point: the same `truckllm` command as the wheel's."""

from truckllm.cli import main

if __name__ == "__main__":
    main(prog_name="truckllm")
