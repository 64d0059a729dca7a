from truckllm.cli import main

main()
