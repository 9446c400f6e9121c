from leukodx.cli import main

main()
