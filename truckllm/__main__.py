from truckllm.cli import main

main(prog_name="truckllm")
