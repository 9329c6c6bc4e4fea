from rtk.cli import main

main()
