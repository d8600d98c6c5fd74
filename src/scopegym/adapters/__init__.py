"""Instruments beside the twin: remote client and server, Nion Swift adapter, record replay.

They sit underneath the environments with :mod:`scopegym.sim`: environments and agents reach them
only by name, through :func:`scopegym.instrument.make_instrument`.
"""
