from ttc.cli import main

main()
