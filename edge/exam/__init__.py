"""Exams: protocols, the best frame per plane, steady feedback, the exam summary."""
