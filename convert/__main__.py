from perceiver_stream.convert.cli import main

main()
