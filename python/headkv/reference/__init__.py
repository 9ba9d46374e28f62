"""Pure NumPy restatements of the paper formulas, written independently of the C++ code and used
by the tests as the reference."""
