from pretrainctl.cli import main

main()
