from walle_core.cli import main

main()
