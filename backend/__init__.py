"""Meteor: console and gateway of a university AI cloud platform."""
