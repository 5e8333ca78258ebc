"""Measuring what kernels and models cost on a real (or a fake) device.

    runner     Runner (the one timer, check and row builder), Result
    host, cuda, fake   the runners: this CPU, GPU 0, a GPU that is not there
    slicing    a kernel's nodes of an exported model, run alone
    variants   which kernels of a model are measured, and how each can run
    collect    measure(model) and collect(zoo) into the dataset; runner(name)
    gemms      a calibration's GEMMs timed alone (`costmodel calibrate`)
"""
from costmodel.measure.collect import RUNNERS, collect, measure, runner
from costmodel.measure.runner import Result, Runner
from costmodel.measure.slicing import Program

__all__ = ["RUNNERS", "Program", "Result", "Runner", "collect", "measure", "runner"]
