"""`aerec`, the command line: one thin module per stage; each command parses its options, calls
one library function and prints. Everything it does is importable without it."""
