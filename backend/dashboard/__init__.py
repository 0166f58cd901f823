"""The dashboard's helpers: sign-in over Meteor's accounts and the admin pages' actions (a front
end: only pages/ and Home.py import it)."""
