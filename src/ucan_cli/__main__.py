from ucan_cli.cli import main

main()
