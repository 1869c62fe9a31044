"""Integrations with other systems. Each module imports its system only when used.

    from inferline.integrations.ray import run_file   # needs the ``ray`` extra
"""
