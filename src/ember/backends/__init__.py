"""Inference backends behind one small protocol. They know nothing of queues or HTTP."""
