"""Placeholder dashboard entry until the dashboard issue lands."""

import streamlit as st

st.title("Meteor")
