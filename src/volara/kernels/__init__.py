"""Numeric kernels shared by tasks.

Plain functions on numpy arrays and plain values: no pydantic, no daisy, no
I/O. Each exists once here and every task that needs it calls it.
"""
