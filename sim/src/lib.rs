//! Simulation of surge.
