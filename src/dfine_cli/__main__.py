from dfine_cli.cli.main import main

main()
