pub mod maglev;
